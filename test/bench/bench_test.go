package main

import (
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ten := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i + 1)
	}
	tests := []struct {
		name    string
		samples []time.Duration
		q       float64
		want    time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one sample", []time.Duration{7}, 99, 7},
		{"median of ten is the fifth", ten, 50, 5},
		{"p99 of ten is the largest", ten, 99, 10},
		{"p100 is the largest", ten, 100, 10},
		{"tiny q is the smallest", ten, 0.1, 1},
		{"p50 of 100", hundred, 50, 50},
		{"p99 of 100", hundred, 99, 99},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.samples, tt.q); got != tt.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", tt.samples, tt.q, got, tt.want)
			}
		})
	}
}

func TestParseSpeed(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    float64
		wantErr bool
	}{
		{"openssl 3", "The 'numbers' are in 1000s of bytes per second processed.\n" +
			"type             16 bytes     64 bytes    256 bytes   1024 bytes   8192 bytes  16384 bytes\n" +
			"AES-128-GCM      46512.13k   182430.91k   649840.38k  1857088.51k  4085317.63k  4480335.87k\n", 4480.33587, false},
		{"lowercase name", "aes-128-gcm 1k 2k 3k 4k 5k 2000.00k\n", 2, false},
		{"no result line", "Doing AES-128-GCM ops for 1s on 16 size blocks\n", 0, true},
		{"unit missing", "AES-128-GCM 1 2 3 4 5 6\n", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSpeed([]byte(tt.out))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if diff := got - tt.want; diff > 1e-6 || diff < -1e-6 {
				t.Errorf("parseSpeed = %v MB/s, want %v", got, tt.want)
			}
		})
	}
}
