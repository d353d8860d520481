package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"syscall"
	"time"
)

// The pod's end after a signal, as connector/outcome.py `interrupted` writes it; a pytest test
// compares the two (tests/test_follower.py).
const tailChars = 1500 // outcome.TAIL_CHARS

var signalNames = map[syscall.Signal]string{syscall.SIGINT: "SIGINT", syscall.SIGTERM: "SIGTERM"}

// stop cancels the job and, once the relay sees it cancelled, ends the pod itself: a hundred
// pods deleted at once then start no interpreter at all, and the node's CPUs go to the kubelet
// stopping the others. It returns (the connector takes over) when the job ended some other way
// meanwhile, or the cancel cannot be confirmed.
func (f *follower) stop(signum syscall.Signal, version int) bool {
	ctx := context.Background()
	if err := f.client.post(ctx, f.jobPath("cancel"), map[string]any{}, nil, 10*time.Second); err != nil {
		f.log.warning("cancel of HPC job %s: %v; the connector retries", f.cfg.jobID, err)
		return false
	}
	f.log.info("stopping: cancelling HPC job %s", f.cfg.jobID)
	deadline := time.Now().Add(cancelWait)
	var final *status
	for final == nil && time.Now().Before(deadline) {
		var got answer
		body := map[string]any{"version": version, "until_ended": true}
		if err := f.client.post(ctx, f.jobPath("status"), body, &got, 30*time.Second); err != nil {
			return false
		}
		if got.Status != nil && got.Status.State != "PENDING" && got.Status.State != "RUNNING" {
			final = got.Status
		}
		version = got.Version
	}
	if final == nil || (final.State != "CANCELLED" && final.State != "UNKNOWN") {
		return false // still queued, or it ended on its own: the connector says how
	}
	raw := final.RawState
	if raw == "" {
		raw = final.State
	}
	f.log.info("HPC job %s ended %s", f.cfg.jobID, raw)
	f.finalOutput(ctx)
	_ = f.client.post(ctx, f.jobPath("release"), map[string]any{}, nil, 20*time.Second)
	code := 128 + int(signum)
	name, known := signalNames[signum]
	if !known {
		name = fmt.Sprintf("signal %d", int(signum))
	}
	message := fmt.Sprintf("%s received: HPC job %s cancelled", name, f.cfg.jobID)
	f.writeTermination(code, message)
	if f.cfg.records {
		f.reporter.line(map[string]any{"job": f.cfg.jobID, "state": "CANCELLED", "reason": "PodStopped", "exit": code})
	}
	f.log.info("exit %d (PodStopped): %s", code, message)
	return true
}

// finalOutput prints what the job wrote before it was cancelled, partial last lines included.
func (f *follower) finalOutput(ctx context.Context) {
	streams := []stream{stdoutStream}
	if f.cfg.splitStderr {
		streams = append(streams, stderrStream)
	}
	for _, s := range streams {
		name := map[stream]string{stdoutStream: "stdout", stderrStream: "stderr"}[s]
		for {
			var got struct {
				Data []byte `json:"data"`
			}
			body := map[string]any{"stream": name, "offset": f.out.offset(s), "limit": readLimit}
			if err := f.client.post(ctx, f.jobPath("read"), body, &got, 30*time.Second); err != nil {
				break
			}
			if f.out.take(s, got.Data) != nil || len(got.Data) < readLimit {
				break
			}
		}
		_ = f.out.flush(s)
	}
}

func (f *follower) writeTermination(code int, message string) {
	if f.cfg.terminationLog == "" {
		return
	}
	data := map[string]any{"jobId": f.cfg.jobID, "state": "CANCELLED", "exitCode": code, "reason": "PodStopped",
		"message": message}
	if tail := string(joinTail(f.out.tail)); tail != "" {
		if len(tail) > tailChars {
			tail = tail[len(tail)-tailChars:]
		}
		data["stderrTail"] = tail
	}
	text, _ := json.Marshal(data)
	_ = os.WriteFile(f.cfg.terminationLog, text, 0o644)
}
