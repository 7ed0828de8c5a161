"""An export run: plan, partitioned crawl, relationship walk, deletions, incremental history, the single writer."""
