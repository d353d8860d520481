package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// fingerprint is relay.protocol.fingerprint: sha256 over each profile file's name and the sha256
// of its content, in name order, the kubelet's dot entries left out.
func fingerprint(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	digest := sha256.New()
	for _, name := range names {
		path := filepath.Join(dir, name)
		if info, err := os.Stat(path); err != nil || !info.Mode().IsRegular() {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		sum := sha256.Sum256(data)
		digest.Write([]byte(name + "\x00"))
		digest.Write(sum[:])
	}
	return hex.EncodeToString(digest.Sum(nil)), nil
}

// changed says whether the mounted profile differs from the one the session was opened with
// (a rotated Secret: the connector moves the job to a new session). Unreadable: not yet.
func changed(dir, want string) bool {
	got, err := fingerprint(dir)
	return err == nil && want != "" && got != want
}
