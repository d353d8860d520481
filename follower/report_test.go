package main

import "testing"

func TestTheSameNewsIsReportedOnce(t *testing.T) {
	one, two := 1, 2
	r := reporter{log: logger{quiet: true}, jobID: "7", last: status{State: "PENDING", Reason: "Priority", Position: &one}}
	r.report(status{State: "PENDING", Reason: "Priority", Position: &one})
	if r.last.Position != &one {
		t.Fatal("the status the connector reported last was said again")
	}
	r.report(status{State: "PENDING", Reason: "Priority", Position: &two})
	if *r.last.Position != 2 {
		t.Fatal("a new queue position was not reported")
	}
	r.report(status{State: "RUNNING"})
	if r.last.State != "RUNNING" {
		t.Fatal("running was not reported")
	}
}
