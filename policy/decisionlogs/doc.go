// Package decisionlogs ships decision logs to an OPA decision-log service,
// as OPA's logs plugin does: the events the engine's policy.DecisionLogger
// writes (OPA's decision-log shape, data.system.log.mask applied) are kept
// in a bounded buffer and POSTed in batches, each a gzip-compressed JSON
// array no larger than the upload size limit, to the service's /logs
// resource, every min to max delay, with exponential backoff after a
// failure.
//
// An Uploader is an io.Writer that never blocks on the network and never
// fails: it takes the logger's lines into its buffer, dropping the oldest
// events (counted) when the buffer is full, so shipping never slows a
// decision. docs/decision-logs.md is the user's description.
package decisionlogs
