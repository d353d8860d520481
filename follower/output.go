package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

type stream int

const (
	stdoutStream stream = iota
	stderrStream
	tailLines = 10      // of the job's stderr, for the termination message (lifecycle.TAIL_LINES)
	tailWidth = 300     // bytes kept of each
	readLimit = 1 << 20 // transport.base.READ_LIMIT: the most one read returns
)

// tailFile is where the stderr lines printed here wait for the connector's termination message.
const tailFile = "stderr-tail"

// output prints the job's complete lines and, before each write, saves in the state file how
// many bytes are printed (job.json's log_offset/err_offset, as lifecycle.Connector._emit): a
// follower killed between the two reattaches after the lines, never printing one twice.
type output struct {
	stateDir string
	record   map[string]any // job.json, the fields this program does not know kept as they are
	done     [2]int64
	partial  [2][]byte
	sinks    [2]*os.File
	tail     [][]byte
}

var offsetKeys = [2]string{"log_offset", "err_offset"}

func openOutput(stateDir string, splitStderr bool) (*output, error) {
	raw, err := os.ReadFile(filepath.Join(stateDir, "job.json"))
	if err != nil {
		return nil, fmt.Errorf("state file: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	o := &output{stateDir: stateDir, sinks: [2]*os.File{os.Stdout, os.Stderr}}
	if err := dec.Decode(&o.record); err != nil {
		return nil, fmt.Errorf("state file: %v", err)
	}
	for i, key := range offsetKeys {
		raw, present := o.record[key]
		if !present {
			continue
		}
		n, ok := raw.(json.Number)
		value, err := n.Int64()
		if !ok || err != nil || value < 0 {
			return nil, fmt.Errorf("state file: %s is not a whole number", key)
		}
		o.done[i] = value
	}
	if !splitStderr {
		o.sinks[stderrStream] = os.Stdout
	}
	return o, nil
}

// offset is where the next read starts: what was printed and the partial line held back.
func (o *output) offset(s stream) int64 {
	return o.done[s] + int64(len(o.partial[s]))
}

// take prints the complete lines of chunk; a partial last line waits for its end.
func (o *output) take(s stream, chunk []byte) error {
	if len(chunk) == 0 {
		return nil
	}
	pending := append(o.partial[s], chunk...)
	cut := bytes.LastIndexByte(pending, '\n') + 1
	if cut > 0 {
		o.done[s] += int64(cut)
		if err := o.save(); err != nil {
			return err
		}
		if _, err := o.sinks[s].Write(pending[:cut]); err != nil {
			return fmt.Errorf("writing the job's output: %v", err)
		}
		if s == stderrStream {
			o.keepTail(pending[:cut])
		}
	}
	o.partial[s] = append([]byte(nil), pending[cut:]...)
	return nil
}

func (o *output) keepTail(lines []byte) {
	for _, line := range bytes.SplitAfter(lines, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if len(line) > tailWidth {
			line = line[len(line)-tailWidth:]
		}
		o.tail = append(o.tail, append([]byte(nil), line...))
	}
	if len(o.tail) > tailLines {
		o.tail = o.tail[len(o.tail)-tailLines:]
	}
}

// save replaces job.json atomically (a temporary file, then rename), as StateStore.save.
func (o *output) save() error {
	for i, key := range offsetKeys {
		o.record[key] = o.done[i]
	}
	data, err := json.Marshal(o.record)
	if err != nil {
		return err
	}
	path := filepath.Join(o.stateDir, "job.json")
	tmp := filepath.Join(o.stateDir, "job.tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("state file: %v", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("state file: %v", err)
	}
	return nil
}

// flush prints a partial last line with a newline once the job has ended, counting only its
// own bytes (lifecycle.Connector._pump_logs with final=True).
func (o *output) flush(s stream) error {
	if len(o.partial[s]) == 0 {
		return nil
	}
	line := append(o.partial[s], '\n')
	o.done[s] += int64(len(o.partial[s]))
	o.partial[s] = nil
	if err := o.save(); err != nil {
		return err
	}
	if _, err := o.sinks[s].Write(line); err != nil {
		return err
	}
	if s == stderrStream {
		o.keepTail(line)
	}
	return nil
}

func joinTail(lines [][]byte) []byte { return bytes.Join(lines, nil) }

// saveTail leaves the stderr lines printed here for the connector's termination message.
func (o *output) saveTail() {
	if len(o.tail) > 0 {
		_ = os.WriteFile(filepath.Join(o.stateDir, tailFile), bytes.Join(o.tail, nil), 0o600)
	}
}
