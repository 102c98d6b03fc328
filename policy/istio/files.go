package istio

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// DecodeFiles reads every resource DecodeAll reads from files and from the
// .yaml, .yml and .json files under directories ("-" is standard input),
// with notes on what was skipped. It decodes every file before it fails,
// so the error lists every problem; the resources decoded are returned
// with it.
func DecodeFiles(paths []string) (*Resources, []Note, error) {
	files, err := ResourceFiles(paths)
	if err != nil {
		return &Resources{}, nil, err
	}
	streams := make([]*stream, len(files))
	for i, file := range files {
		streams[i] = readFile(file)
	}
	decodeStreams(streams, true)
	all := &Resources{}
	var notes []Note
	var errs []error
	for _, s := range streams {
		res, ns, err := s.result()
		all.AuthorizationPolicies = append(all.AuthorizationPolicies, res.AuthorizationPolicies...)
		all.PeerAuthentications = append(all.PeerAuthentications, res.PeerAuthentications...)
		all.RequestAuthentications = append(all.RequestAuthentications, res.RequestAuthentications...)
		notes = append(notes, ns...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return all, notes, errors.Join(errs...)
}

// readFile reads a file, or standard input ("-"), into documents.
func readFile(path string) *stream {
	if path == "-" {
		return readStream(os.Stdin, "-", 0)
	}
	f, err := os.Open(path)
	if err != nil {
		return &stream{source: path, err: err}
	}
	defer f.Close()
	size := 0
	if info, err := f.Stat(); err == nil && info.Mode().IsRegular() {
		size = int(min(info.Size(), 1<<30))
	}
	return readStream(f, path, size)
}

// ResourceFiles expands directories into the .yaml, .yml and .json files
// under them; files and "-" (standard input) stay as given.
func ResourceFiles(paths []string) ([]string, error) {
	var out []string
	for _, p := range paths {
		if p == "-" {
			out = append(out, p)
			continue
		}
		info, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !info.IsDir() {
			out = append(out, p)
			continue
		}
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && slices.Contains([]string{".yaml", ".yml", ".json"}, strings.ToLower(filepath.Ext(path))) {
				out = append(out, path)
			}
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
