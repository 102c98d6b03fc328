package localmesh

import (
	"slices"
	"testing"
)

// recorder keeps every Write it gets.
type recorder struct{ writes []string }

func (r *recorder) Write(b []byte) (int, error) {
	r.writes = append(r.writes, string(b))
	return len(b), nil
}

func TestLineWriter(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		want   []string
	}{
		{"whole lines pass at once", []string{"a\nb\n"}, []string{"a\nb\n"}},
		{"a split line waits for its end", []string{`{"dir`, `ection":"in"}` + "\n"}, []string{`{"direction":"in"}` + "\n"}},
		{"the complete part passes, the rest waits", []string{"a\nb", "c\n"}, []string{"a\n", "bc\n"}},
		{"no newline, nothing passes", []string{"abc"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r recorder
			w := &lineWriter{w: &r}
			for _, c := range tt.chunks {
				if n, err := w.Write([]byte(c)); n != len(c) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", c, n, err)
				}
			}
			if !slices.Equal(r.writes, tt.want) {
				t.Errorf("writes = %q, want %q", r.writes, tt.want)
			}
		})
	}
}
