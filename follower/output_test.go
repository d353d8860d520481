package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func newOutput(t *testing.T, record string) (*output, string, *os.File, *os.File) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "job.json"), []byte(record), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := openOutput(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	stdout, _ := os.Create(filepath.Join(dir, "stdout"))
	stderr, _ := os.Create(filepath.Join(dir, "stderr"))
	o.sinks = [2]*os.File{stdout, stderr}
	return o, dir, stdout, stderr
}

func saved(t *testing.T, dir string) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "job.json"))
	if err != nil {
		t.Fatal(err)
	}
	var record map[string]any
	if err := json.Unmarshal(raw, &record); err != nil {
		t.Fatal(err)
	}
	return record
}

// Complete lines are printed and counted in the state file; a partial line waits for its end,
// and the next read starts after it.
func TestPartialLinesWaitAndOffsetsCountPrintedBytes(t *testing.T) {
	o, dir, stdout, _ := newOutput(t, `{"job_id": "7", "log_offset": 100, "err_offset": 5, "part": "", "ended": false}`)
	if got := o.offset(stdoutStream); got != 100 {
		t.Fatalf("offset %d, want the saved 100", got)
	}
	if err := o.take(stdoutStream, []byte("one\ntw")); err != nil {
		t.Fatal(err)
	}
	if got := saved(t, dir)["log_offset"]; got != float64(104) {
		t.Fatalf("saved log_offset %v, want 104 (the partial line is not printed yet)", got)
	}
	if got := o.offset(stdoutStream); got != 106 {
		t.Fatalf("next read at %d, want 106", got)
	}
	if err := o.take(stdoutStream, []byte("o\n")); err != nil {
		t.Fatal(err)
	}
	printed, _ := os.ReadFile(stdout.Name())
	if string(printed) != "one\ntwo\n" {
		t.Fatalf("printed %q", printed)
	}
	record := saved(t, dir)
	if record["log_offset"] != float64(108) || record["err_offset"] != float64(5) || record["job_id"] != "7" ||
		record["ended"] != false {
		t.Fatalf("state file %v: the other fields must stay as they were", record)
	}
}

// The last stderr lines are kept, each cut to its end, for the termination message.
func TestStderrTailKeepsTheLastLines(t *testing.T) {
	o, dir, _, stderr := newOutput(t, `{"job_id": "7", "log_offset": 0, "err_offset": 0}`)
	for i := 0; i < 15; i++ {
		if err := o.take(stderrStream, []byte("line "+string(rune('a'+i))+"\n")); err != nil {
			t.Fatal(err)
		}
	}
	o.saveTail()
	tail, _ := os.ReadFile(filepath.Join(dir, tailFile))
	if string(tail) != "line f\nline g\nline h\nline i\nline j\nline k\nline l\nline m\nline n\nline o\n" {
		t.Fatalf("tail %q", tail)
	}
	printed, _ := os.ReadFile(stderr.Name())
	if len(printed) != 15*7 {
		t.Fatalf("printed %d bytes of stderr, want all %d", len(printed), 15*7)
	}
}

// A state file it cannot read is a hand-back, never a guess at the offsets.
func TestAStateFileWithABadOffsetIsRefused(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "job.json"), []byte(`{"log_offset": "x"}`), 0o600)
	if _, err := openOutput(dir, false); err == nil {
		t.Fatal("a log_offset that is no number must be refused")
	}
}
