package policy

// Verdict is the outcome of one evaluation: allow or deny, and what decided.
type Verdict struct {
	Allow bool `json:"allow"`
	// Policy is the deciding policy ("<ns>/<name>" for translated
	// AuthorizationPolicies), empty when no single policy decided (no policy
	// applies, or ALLOW policies select the destination and none matched).
	Policy string `json:"policy"`
	// Rule is the deciding rule: its index in the policy, or a name chosen by
	// the Rego author. Numbers are rendered in decimal.
	Rule string `json:"rule"`
	// Reason says why, in words for the person reading an access log.
	Reason string `json:"reason"`
}

// PolicyRule names one rule of one policy.
type PolicyRule struct {
	Policy string `json:"policy"`
	Rule   string `json:"rule"`
}

// Decision is the engine's answer for one input. It is always fail-closed:
// whenever Decide returns an error, Allow is false and Reason says why.
type Decision struct {
	Verdict
	// Audit lists the AUDIT rules that matched; they never change Allow.
	Audit []PolicyRule `json:"audit,omitempty"`
	// DryRun is the verdict had the dry-run policies been enforced; nil when
	// the bundle set has no dry-run policy.
	DryRun *Verdict `json:"dry_run,omitempty"`
}

// Reasons the engine itself gives, without consulting policy.
const (
	ReasonNoPolicy  = "no policy loaded"
	ReasonUndefined = "decision undefined: the bundle set did not produce data.mesh.authz.decision"
)

func deny(reason string) Decision {
	return Decision{Verdict: Verdict{Allow: false, Reason: reason}}
}
