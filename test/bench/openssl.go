package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// aesGCMSpeed runs `openssl speed -evp aes-128-gcm -seconds 1` and
// returns its 16384-byte figure in MB/s (10^6 bytes/s): what one core
// can encrypt, the ceiling for encrypted bytes per core.
func aesGCMSpeed(ctx context.Context) (float64, error) {
	out, err := exec.CommandContext(ctx, "openssl", "speed", "-evp", "aes-128-gcm", "-seconds", "1").Output()
	if err != nil {
		return 0, fmt.Errorf("bench: openssl speed (is openssl installed?): %w", err)
	}
	return parseSpeed(out)
}

// parseSpeed reads the last column of openssl speed's result line, e.g.
// "AES-128-GCM  ...  5270718.46k" (thousands of bytes per second).
func parseSpeed(out []byte) (float64, error) {
	var last string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 7 && strings.EqualFold(f[0], "aes-128-gcm") {
			last = f[6]
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSuffix(last, "k"), 64)
	if last == "" || !strings.HasSuffix(last, "k") || err != nil {
		return 0, fmt.Errorf("bench: no AES-128-GCM 16384-byte figure in openssl speed output:\n%s", out)
	}
	return v * 1000 / 1e6, nil
}
