"""Stage 4: compare, tables, figures and the end-to-end reproduction."""
