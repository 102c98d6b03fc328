package bundleserver

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/open-policy-agent/opa/v1/bundle"
)

// maxArchiveBytes bounds what one translated archive may expand to.
const maxArchiveBytes = 1 << 30

// emptyMetadata declares a bundle without modules empty on purpose, as
// the proxies' engine requires (docs/bundles.md): the controller's
// translation of a cluster without policies is "no policy", not a
// bundle that went missing.
var emptyMetadata = map[string]any{"regomesh": map[string]any{"empty": true}}

// prepare turns a translated bundle archive (.manifest and Rego modules,
// as policy/istio writes it) into the archive served: the same files, a
// .manifest that declares a bundle without modules empty, and, with a
// signer, a .signatures.json over all of them. Modules are not parsed:
// the translation produced them, and the proxies compile them.
func prepare(archive []byte, signer *Signer) ([]byte, error) {
	b, err := unpack(archive)
	if err != nil {
		return nil, err
	}
	if len(b.Modules) == 0 {
		if b.Manifest.Metadata == nil {
			b.Manifest.Metadata = map[string]any{}
		}
		b.Manifest.Metadata["regomesh"] = emptyMetadata["regomesh"]
	}
	if signer != nil {
		if err := signer.sign(&b); err != nil {
			return nil, err
		}
	}
	var out bytes.Buffer
	if err := bundle.NewWriter(&out).Write(b); err != nil {
		return nil, fmt.Errorf("bundleserver: write bundle: %w", err)
	}
	return out.Bytes(), nil
}

// unpack reads a .tar.gz of a .manifest and .rego files. Anything else
// is refused: a file the translation does not write would be served
// unexamined, and signed.
func unpack(archive []byte) (bundle.Bundle, error) {
	b := bundle.Bundle{Data: map[string]any{}}
	gz, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		return b, fmt.Errorf("bundleserver: read bundle: %w", err)
	}
	tr := tar.NewReader(io.LimitReader(gz, maxArchiveBytes))
	manifest := false
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return b, fmt.Errorf("bundleserver: read bundle: %w", err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		name := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		data, err := io.ReadAll(tr)
		if err != nil {
			return b, fmt.Errorf("bundleserver: read bundle: %s: %w", name, err)
		}
		switch {
		case name == ".manifest":
			if err := json.Unmarshal(data, &b.Manifest); err != nil {
				return b, fmt.Errorf("bundleserver: read bundle: .manifest: %w", err)
			}
			manifest = true
		case strings.HasSuffix(name, ".rego"):
			b.Modules = append(b.Modules, bundle.ModuleFile{URL: "/" + name, Path: "/" + name, RelativePath: name, Raw: data})
		default:
			return b, fmt.Errorf("bundleserver: read bundle: unexpected file %s: a translated bundle holds a .manifest and Rego modules", name)
		}
	}
	if !manifest {
		return b, errors.New("bundleserver: read bundle: no .manifest")
	}
	return b, nil
}
