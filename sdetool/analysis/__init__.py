"""Stage 2: the streaming analysis of stores and arrays, its options, report objects and gates."""
