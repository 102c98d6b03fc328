package xds

// Waiting is how many streams wait for the server's first state.
func (s *Server) Waiting() int { return int(s.waiting.Load()) }
