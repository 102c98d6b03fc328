package cli

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// outputFormat is -o: json, yaml or text.
type outputFormat string

func registerOutput(flags *pflag.FlagSet, f *outputFormat) {
	*f = "text"
	flags.VarP(f, "output", "o", "output format: text, json or yaml")
}

func (f *outputFormat) String() string { return string(*f) }
func (f *outputFormat) Type() string   { return "format" }

func (f *outputFormat) Set(s string) error {
	switch s {
	case "text", "json", "yaml":
		*f = outputFormat(s)
		return nil
	}
	return fmt.Errorf("%q is not text, json or yaml", s)
}

// writeData prints v as JSON (one object, one line per field indent) or
// YAML; text is the caller's business.
func writeData(w io.Writer, format outputFormat, v any) error {
	js, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if format == "yaml" {
		y, err := yaml.JSONToYAML(js)
		if err != nil {
			return err
		}
		_, err = w.Write(y)
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", js)
	return err
}
