"""Action-based evals: golden sets, scoring on actions and final state, gates, reports."""
