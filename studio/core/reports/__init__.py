"""Typed results of jobs (run reports, figures), written and read as versioned JSON."""
