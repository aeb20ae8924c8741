"""The research pages: findings, incidents, stage reviews."""
