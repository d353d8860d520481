package main

import (
	"context"
	"fmt"
	"time"
)

// status is the relay's wire status (relay/protocol.py status_to_wire), the fields followed here.
type status struct {
	State         string  `json:"state"`
	RawState      string  `json:"raw_state"`
	Reason        string  `json:"reason"`
	Position      *int    `json:"queue_position"`
	StartEstimate *string `json:"start_estimate"`
	Node          *string `json:"node"`
	Requeued      bool    `json:"requeued"`
}

type progress struct {
	Stdout     []byte `json:"stdout"` // base64 on the wire
	Stderr     []byte `json:"stderr"`
	ExitStatus *int   `json:"exit_status"`
}

type answer struct {
	Progress progress `json:"progress"`
	Status   *status  `json:"status"`
	Version  int      `json:"version"`
	Fault    *string  `json:"fault"`
}

type follower struct {
	cfg      config
	log      logger
	client   *relayClient
	out      *output
	ready    *readyPort
	reporter reporter
	version  int // of the last status the relay gave
}

func (f *follower) jobPath(action string) string {
	return fmt.Sprintf("/v1/session/%s/job/%s/%s", f.cfg.session, f.cfg.key, action)
}

// run follows the job until something needs the connector; it says what, and why.
func (f *follower) run(ctx context.Context) (reason, detail string) {
	version := f.cfg.version
	defer func() { f.version = version }()
	nextProfile := time.Now().Add(profileTick)
	for {
		if ctx.Err() != nil {
			return "signal", ""
		}
		if f.cfg.profileDir != "" && time.Now().After(nextProfile) {
			nextProfile = time.Now().Add(profileTick)
			if changed(f.cfg.profileDir, f.cfg.fingerprint) {
				return "profile", "the profile changed"
			}
		}
		body := map[string]any{"stdout_offset": f.out.offset(stdoutStream), "stderr_offset": nil,
			"marker": true, "version": version}
		if f.cfg.splitStderr {
			body["stderr_offset"] = f.out.offset(stderrStream)
		}
		var got answer
		if err := f.client.post(ctx, f.jobPath("wait"), body, &got, waitTimeout); err != nil {
			if ctx.Err() != nil {
				return "signal", ""
			}
			return "relay", err.Error()
		}
		if err := f.out.take(stdoutStream, got.Progress.Stdout); err != nil {
			return "error", err.Error()
		}
		if err := f.out.take(stderrStream, got.Progress.Stderr); err != nil {
			return "error", err.Error()
		}
		if got.Fault != nil && *got.Fault != "" {
			return "fault", "the relay reports a fault on the HPC side"
		}
		if got.Progress.ExitStatus != nil {
			return "end", "the job's payload ended"
		}
		if got.Status == nil {
			continue
		}
		version = got.Version
		if got.Status.State != "PENDING" && got.Status.State != "RUNNING" {
			return "end", got.Status.State
		}
		f.ready.set(got.Status.State == "RUNNING", f.log)
		f.reporter.report(*got.Status)
	}
}
