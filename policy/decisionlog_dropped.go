package policy

// DecisionLogDropped counts n decision-log events lost for reason in
// regomesh_policy_decision_log_dropped_total, for the components that ship
// the log onwards (policy/decisionlogs). A nil Metrics counts nothing.
func (m *Metrics) DecisionLogDropped(reason string, n int) {
	if m == nil || n <= 0 {
		return
	}
	m.logDropped.WithLabelValues(reason).Add(float64(n))
}
