"""Running a matrix: one subprocess per cell (worker), orchestrated with timeouts and resume."""
