package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// logger writes the connector's log format (connector/cli.py) on stderr.
type logger struct{ quiet bool }

func (l logger) line(level, format string, args ...any) {
	stamp := time.Now().UTC().Format("2006-01-02T15:04:05")
	fmt.Fprintf(os.Stderr, "%sZ hpc-connector %s %s\n", stamp, level, fmt.Sprintf(format, args...))
}

func (l logger) info(format string, args ...any) {
	if !l.quiet {
		l.line("INFO", format, args...)
	}
}

func (l logger) warning(format string, args ...any) {
	if !l.quiet {
		l.line("WARNING", format, args...)
	}
}

func (l logger) error(format string, args ...any) { l.line("ERROR", format, args...) }

// reporter says a pending or running job's news once, as lifecycle.Connector._report: a log
// line and an hpc-offload-state record (connector/record.py, version 1).
type reporter struct {
	log     logger
	records bool
	jobID   string
	last    status
}

func (r *reporter) report(s status) {
	same := r.last.State == s.State
	if same && (s.State != "PENDING" || (r.last.Reason == s.Reason && intEq(r.last.Position, s.Position))) {
		return
	}
	r.last = s
	if r.records {
		r.record(s)
	}
	if s.State == "PENDING" {
		again, reason, where, start := "", "", "", ""
		if s.Requeued {
			again = " again (requeued)"
		}
		if s.Reason != "" && s.Reason != "None" {
			reason = " (" + s.Reason + ")"
		}
		if s.Position != nil && *s.Position != 0 {
			where = ", position " + strconv.Itoa(*s.Position) + " in queue"
		}
		if s.StartEstimate != nil && *s.StartEstimate != "" {
			start = ", estimated start " + *s.StartEstimate
		}
		r.log.info("HPC job %s pending%s%s%s%s", r.jobID, again, reason, where, start)
	} else {
		on := ""
		if s.Node != nil && *s.Node != "" {
			on = " on " + *s.Node
		}
		r.log.info("HPC job %s running%s", r.jobID, on)
	}
}

func (r *reporter) record(s status) {
	body := map[string]any{"job": r.jobID, "state": s.State}
	if s.Reason != "" {
		body["reason"] = s.Reason
	}
	if s.Position != nil {
		body["position"] = *s.Position
	}
	if s.StartEstimate != nil {
		body["start"] = *s.StartEstimate
	}
	if s.Node != nil {
		body["node"] = *s.Node
	}
	r.line(body)
}

// line writes one record (record.py: version 1, sorted keys, a time).
func (r *reporter) line(body map[string]any) {
	body["v"] = 1
	body["time"] = time.Now().UTC().Format("2006-01-02T15:04:05Z")
	data, _ := json.Marshal(body) // sorted keys, as the connector writes them
	os.Stderr.Write(append([]byte("hpc-offload-state: "), append(data, '\n')...))
}

func intEq(a, b *int) bool {
	return (a == nil && b == nil) || (a != nil && b != nil && *a == *b)
}

// readyPort listens while the job runs (connector/readiness.py): the pod's TCP readiness probe.
type readyPort struct {
	port     int
	listener net.Listener
}

func (p *readyPort) set(ready bool, l logger) {
	if p.port == 0 || ready == (p.listener != nil) {
		return
	}
	if !ready {
		p.close()
		return
	}
	listener, err := net.Listen("tcp", ":"+strconv.Itoa(p.port))
	if err != nil {
		l.warning("readiness port %d cannot be opened (%v); the pod shows Ready late", p.port, err)
		return
	}
	p.listener = listener
}

func (p *readyPort) close() {
	if p.listener != nil {
		p.listener.Close()
		p.listener = nil
	}
}
