package bundleserver

// Waiting is how many long polls the server holds now.
func (s *Server) Waiting() int64 { return s.waiting.Load() }
