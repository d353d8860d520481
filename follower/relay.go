package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// The same settings the Python relay client reads (connector/backends/relay.py).
const (
	caEnv        = "HPC_OFFLOAD_RELAY_CA"
	caFileEnv    = "HPC_OFFLOAD_RELAY_CA_FILE"
	tokenFileEnv = "HPC_OFFLOAD_RELAY_TOKEN_FILE"
	tokenFile    = "/var/run/hpc-offload/relay/token"
	maxAnswer    = 8 << 20 // bytes: two base64 chunks of READ_LIMIT (1 MiB) and a status
)

// relayClient posts JSON to the relay over TLS with the pod's projected token. No proxy from the
// environment and no certificate but the relay's CA: the pod's variables never steer it.
type relayClient struct {
	base  string
	http  *http.Client
	token string
}

type relayError struct {
	status int
	kind   string
	msg    string
}

func (e *relayError) Error() string {
	if e.kind != "" {
		return fmt.Sprintf("relay answered HTTP %d (%s): %s", e.status, e.kind, e.msg)
	}
	return fmt.Sprintf("relay answered HTTP %d: %s", e.status, e.msg)
}

func newClient(base string) (*relayClient, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("relay URL %q is not https://HOST[:PORT]", base)
	}
	roots, err := relayRoots()
	if err != nil {
		return nil, err
	}
	transport := &http.Transport{
		Proxy:               nil,
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     2 * time.Minute,
		TLSHandshakeTimeout: 20 * time.Second,
	}
	token := os.Getenv(tokenFileEnv)
	if token == "" {
		token = tokenFile
	}
	return &relayClient{base: strings.TrimRight(base, "/"), http: &http.Client{Transport: transport}, token: token}, nil
}

func relayRoots() (*x509.CertPool, error) {
	pem := []byte(os.Getenv(caEnv))
	if file := os.Getenv(caFileEnv); len(pem) == 0 && file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("relay CA file %s: %v", file, err)
		}
		pem = data
	}
	if len(pem) == 0 {
		return x509.SystemCertPool()
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("the relay CA holds no PEM certificate")
	}
	return pool, nil
}

// post sends body to path and decodes the answer into into (200/202), within timeout.
func (c *relayClient) post(ctx context.Context, path string, body any, into any, timeout time.Duration) error {
	token, err := os.ReadFile(c.token) // re-read: the kubelet rotates it
	if err != nil {
		return fmt.Errorf("no relay token at %s", c.token)
	}
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("relay unreachable: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return fmt.Errorf("relay answer: %w", err)
	}
	if len(raw) > maxAnswer {
		return errors.New("relay answer larger than 8 MiB")
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
		var e struct {
			Error   string `json:"error"`
			Message string `json:"message"`
		}
		_ = json.Unmarshal(raw, &e)
		if len(e.Message) > 200 {
			e.Message = e.Message[:200]
		}
		return &relayError{status: resp.StatusCode, kind: e.Error, msg: e.Message}
	}
	if into == nil || len(raw) == 0 {
		return nil
	}
	return json.Unmarshal(raw, into)
}
