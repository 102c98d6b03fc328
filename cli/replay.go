package cli

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/regomesh/regomesh/policy"
)

// replayReport is what `policy replay -o json` prints.
type replayReport struct {
	Decisions int         `json:"decisions"`
	Unchanged int         `json:"unchanged"`
	Flipped   int         `json:"flipped"`
	Flips     []flipGroup `json:"flips"`
}

// flipGroup counts the decisions that flipped the same way for the same
// reason: the rule that decided before and the one that decides now.
type flipGroup struct {
	Direction string `json:"direction"` // "allow->deny" or "deny->allow"
	Before    string `json:"before"`    // policy/rule that decided before (or the reason)
	After     string `json:"after"`     // policy/rule that decides now (or the reason)
	Count     int    `json:"count"`
	// Example is the first logged input that flipped this way.
	Example json.RawMessage `json:"example"`
	// Lines are the decision-log line numbers (1-based) of every flip.
	Lines []int `json:"lines"`
}

// loggedDecision is the part of an OPA decision-log line replay reads.
type loggedDecision struct {
	DecisionID string          `json:"decision_id"`
	Timestamp  time.Time       `json:"timestamp"`
	Input      json.RawMessage `json:"input"`
	Result     json.RawMessage `json:"result"`
}

func newReplayCommand() *cobra.Command {
	var sources policySources
	var logPath string
	var output outputFormat
	cmd := &cobra.Command{
		Use:   "replay --log DECISIONS.jsonl (--bundle NEW... | --policies NEW...)",
		Short: "Re-decide logged inputs under candidate policy and report the flips; exit 2 if any",
		Long: `replay reads a decision log (OPA's decision-log JSON lines, as regomesh's engine
writes them), decides every logged input again under the candidate bundles, and
reports the decisions that flip (allow->deny, deny->allow), grouped by the rule
that decided before and the one that decides now, with counts and an example.
Each input is decided as of its logged timestamp, so rules that read the clock
(time.now_ns) see the moment of the original decision.
Exit status: 0 nothing flips, 2 something flips, 1 error.`,
		Example: `  regomesh policy replay --log /var/log/regomesh/decisions.jsonl --bundle ./policy-v2
  regomesh policy replay --log decisions.jsonl --bundle new.tar.gz -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runReplay(cmd, &sources, logPath, output)
		},
	}
	sources.register(cmd.Flags())
	cmd.Flags().StringVar(&logPath, "log", "", "decision log to replay (JSON lines; - reads stdin)")
	registerOutput(cmd.Flags(), &output)
	cmd.MarkFlagRequired("log")
	return cmd
}

func runReplay(cmd *cobra.Command, sources *policySources, logPath string, output outputFormat) error {
	engine, warnings, err := sources.engine(cmd.Context())
	if err != nil {
		return err
	}
	for _, w := range warnings {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", w)
	}
	r, closeLog, err := openLog(logPath, cmd.InOrStdin())
	if err != nil {
		return err
	}
	defer closeLog()
	report, err := replay(cmd, engine, r)
	if err != nil {
		return fmt.Errorf("%s: %w", logPath, err)
	}
	if output != "text" {
		err = writeData(cmd.OutOrStdout(), output, report)
	} else {
		printReplay(cmd.OutOrStdout(), report)
	}
	if err != nil {
		return err
	}
	if report.Flipped > 0 {
		return denied()
	}
	return nil
}

func openLog(path string, stdin io.Reader) (io.Reader, func(), error) {
	if path == "-" {
		return stdin, func() {}, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("decision log: %w", err)
	}
	return f, func() { f.Close() }, nil
}

func replay(cmd *cobra.Command, engine *policy.Engine, r io.Reader) (replayReport, error) {
	report := replayReport{Flips: []flipGroup{}}
	groups := map[[3]string]*flipGroup{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for line := 1; sc.Scan(); line++ {
		if len(strings.TrimSpace(sc.Text())) == 0 {
			continue
		}
		before, in, at, raw, err := parseLogged(sc.Bytes())
		if err != nil {
			return report, fmt.Errorf("line %d: %w", line, err)
		}
		report.Decisions++
		ctx := cmd.Context()
		if !at.IsZero() {
			ctx = policy.WithTime(ctx, at)
		}
		after, err := engine.Decide(ctx, in)
		if err != nil {
			return report, fmt.Errorf("line %d: %w", line, err)
		}
		if after.Allow == before.Allow {
			report.Unchanged++
			continue
		}
		report.Flipped++
		addFlip(groups, before, after.Verdict, raw, line)
	}
	if err := sc.Err(); err != nil {
		return report, err
	}
	for _, g := range groups {
		report.Flips = append(report.Flips, *g)
	}
	slices.SortFunc(report.Flips, func(a, b flipGroup) int {
		return cmp.Or(b.Count-a.Count, cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.Before, b.Before), cmp.Compare(a.After, b.After))
	})
	return report, nil
}

// parseLogged reads one decision-log line: the verdict logged, the input,
// when it was decided (zero if the line does not say) and the raw input.
func parseLogged(line []byte) (before policy.Verdict, in policy.Input, at time.Time, raw json.RawMessage, err error) {
	var logged loggedDecision
	if err := json.Unmarshal(line, &logged); err != nil {
		return before, in, at, nil, fmt.Errorf("not a decision-log line: %w", err)
	}
	if len(logged.Input) == 0 || len(logged.Result) == 0 {
		return before, in, at, nil, fmt.Errorf("decision %s has no input or no result", logged.DecisionID)
	}
	if err := json.Unmarshal(logged.Result, &before); err != nil {
		return before, in, at, nil, fmt.Errorf("decision %s: result: %w", logged.DecisionID, err)
	}
	if in, err = policy.DecodeInput(logged.Input); err != nil {
		return before, in, at, nil, fmt.Errorf("decision %s: %w", logged.DecisionID, err)
	}
	return before, in, logged.Timestamp, logged.Input, nil
}

func addFlip(groups map[[3]string]*flipGroup, before, after policy.Verdict, example json.RawMessage, line int) {
	direction := "allow->deny"
	if after.Allow {
		direction = "deny->allow"
	}
	key := [3]string{direction, decidedBy(before), decidedBy(after)}
	g := groups[key]
	if g == nil {
		g = &flipGroup{Direction: direction, Before: key[1], After: key[2], Example: example}
		groups[key] = g
	}
	g.Count++
	g.Lines = append(g.Lines, line)
}

// decidedBy names what decided: the policy and rule, or the reason when no
// single rule did.
func decidedBy(v policy.Verdict) string {
	if v.Policy == "" {
		return v.Reason
	}
	return fmt.Sprintf("%s rule %s", v.Policy, v.Rule)
}

func printReplay(w io.Writer, r replayReport) {
	fmt.Fprintf(w, "%d decisions replayed: %d unchanged, %d flipped\n", r.Decisions, r.Unchanged, r.Flipped)
	for _, g := range r.Flips {
		fmt.Fprintf(w, "\n%d %s\n  before: %s\n  now:    %s\n  example: %s\n  log lines: %s\n",
			g.Count, g.Direction, g.Before, g.After, g.Example, lineList(g.Lines))
	}
}

func lineList(lines []int) string {
	const shown = 10
	parts := make([]string, 0, shown+1)
	for i, l := range lines {
		if i == shown {
			parts = append(parts, fmt.Sprintf("... (%d more)", len(lines)-shown))
			break
		}
		parts = append(parts, fmt.Sprint(l))
	}
	return strings.Join(parts, ", ")
}
