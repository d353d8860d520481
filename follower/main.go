// hpc-offload-follow: the lean follower of a relay-mode connector (docs/relay.md).
//
// The Python connector submits or reattaches, then, once the job is pending or running and the
// relay answers, replaces itself (exec) with this program, which only follows: one long poll at
// a time to the relay, the job's new output to the container's stdout/stderr (offsets saved
// first, as the connector does), the pending/running lines and records, the readiness port. It
// holds no SSH client, no Python and a few MiB. Anything else (the job's end, its end marker, a
// fault, an unexpected answer, a rotated profile, a signal) hands the job back: the connector is
// exec'd again with the reason and reattaches from the state file. A signal first sends the
// cancel, so a deleted pod's job leaves the queue without waiting for Python to start.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Environment the connector reads back after the hand-back (connector/follower.py).
const (
	returnEnv   = "HPC_OFFLOAD_FOLLOWER_RETURN"
	cancelEnv   = "HPC_OFFLOAD_FOLLOWER_CANCEL"
	lastEnv     = "HPC_OFFLOAD_FOLLOWER_LAST"
	sessionEnv  = "HPC_OFFLOAD_FOLLOWER_SESSION"
	waitTimeout = 90 * time.Second
	profileTick = 10 * time.Second
	cancelWait  = 60 * time.Second // for the job to end after a signal's cancel, at most
)

type config struct {
	relay, session, key, jobID, stateDir, profileDir, fingerprint, terminationLog string
	version, readyPort                                                            int
	records, quiet, splitStderr                                                   bool
	last                                                                          status
	back                                                                          []string
}

func parse(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("hpc-offload-follow", flag.ContinueOnError)
	fs.StringVar(&c.relay, "relay", "", "relay base URL (https://host:port)")
	fs.StringVar(&c.session, "session", "", "relay session id")
	fs.StringVar(&c.key, "job", "", "the job's key at the relay")
	fs.StringVar(&c.jobID, "job-id", "", "the HPC job id")
	fs.StringVar(&c.stateDir, "state-dir", "", "the connector's state directory (job.json)")
	fs.StringVar(&c.terminationLog, "termination-log", "", "where the pod's end report goes")
	fs.StringVar(&c.profileDir, "profile", "", "the mounted profile directory")
	fs.StringVar(&c.fingerprint, "fingerprint", "", "sha256 fingerprint of the profile the session was opened with")
	fs.IntVar(&c.version, "version", 0, "the status version the connector has")
	fs.IntVar(&c.readyPort, "ready-port", 0, "listen here while the job runs (0: no readiness port)")
	fs.BoolVar(&c.records, "records", false, "write hpc-offload-state records on stderr")
	fs.BoolVar(&c.quiet, "quiet", false, "log errors only (logs: job-only)")
	fs.BoolVar(&c.splitStderr, "stderr", false, "the job's stderr is a stream of its own")
	fs.StringVar(&c.last.State, "last-state", "", "the state the connector reported last")
	fs.StringVar(&c.last.Reason, "last-reason", "", "its reason")
	last := fs.Int("last-position", 0, "its queue position (0: none)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if *last > 0 {
		c.last.Position = last
	}
	c.back = fs.Args()
	if c.relay == "" || c.session == "" || c.key == "" || c.jobID == "" || c.stateDir == "" || len(c.back) == 0 {
		return c, errors.New("--relay, --session, --job, --job-id, --state-dir and the connector's command after -- are required")
	}
	return c, nil
}

func main() {
	// First thing: the Go runtime unblocks SIGTERM/SIGINT at start (the connector blocks them
	// for the exec) and ends the process on one that arrives before this; keep that short.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	runtime.GOMAXPROCS(1)
	debug.SetGCPercent(50)
	cfg, err := parse(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "hpc-offload-follow: %v\n", err)
		os.Exit(2)
	}
	lg := logger{quiet: cfg.quiet}
	client, err := newClient(cfg.relay)
	if err != nil {
		handBack(cfg, lg, "error", 0, err.Error(), cfg.last)
	}
	out, err := openOutput(cfg.stateDir, cfg.splitStderr)
	if err != nil {
		handBack(cfg, lg, "error", 0, err.Error(), cfg.last)
	}
	f := &follower{cfg: cfg, log: lg, client: client, out: out, ready: &readyPort{port: cfg.readyPort},
		reporter: reporter{log: lg, records: cfg.records, jobID: cfg.jobID, last: cfg.last}}
	f.ready.set(cfg.last.State == "RUNNING", lg) // the connector's port closed with its exec
	ctx, interrupt := context.WithCancel(context.Background())
	var caught atomic.Int32
	go func() {
		s := (<-signals).(syscall.Signal)
		caught.Store(int32(s))
		interrupt()
	}()
	reason, detail := f.run(ctx)
	f.ready.close()
	if signum := syscall.Signal(caught.Load()); signum != 0 {
		if f.stop(signum, f.version) {
			os.Exit((128 + int(signum)) & 0xFF)
		}
		reason, detail = "signal", signum.String()
	}
	out.saveTail()
	handBack(cfg, lg, reason, int(caught.Load()), detail, f.reporter.last) // a signal now: the connector cancels
}

// handBack replaces this process with the connector again; it reattaches from the state file.
func handBack(cfg config, lg logger, reason string, signum int, detail string, last status) {
	if reason != "end" && reason != "signal" {
		lg.info("handing HPC job %s back to the connector (%s)", cfg.jobID, detail)
	}
	position := 0
	if last.Position != nil {
		position = *last.Position
	}
	env := append(os.Environ(), returnEnv+"="+reason, sessionEnv+"="+cfg.session,
		lastEnv+"="+last.State+"|"+strconv.Itoa(position)+"|"+last.Reason)
	if signum != 0 {
		env = append(env, cancelEnv+"="+strconv.Itoa(signum))
	}
	// The connector finds a signal sent from here on pending, not lost (it unblocks them once
	// its handlers are in place): blocked on this thread, the mask survives the exec.
	runtime.LockOSThread()
	blocked := uint64(1<<(syscall.SIGTERM-1) | 1<<(syscall.SIGINT-1))
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, 0 /* SIG_BLOCK */, uintptr(unsafe.Pointer(&blocked)), 0, 8, 0, 0)
	err := syscall.Exec(cfg.back[0], cfg.back, env)
	lg.error("cannot start the connector again (%s): %v", cfg.back[0], err)
	os.Exit(70)
}
