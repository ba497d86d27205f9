"""The value types every layer reads: formats and their exact and upward float64 arithmetic
(fparith), a layer's geometry and the gradients' names, a case (spec arrays and eps), what a
backend takes (supports), the verdicts, typed results (outcome) and campaign profiles."""
