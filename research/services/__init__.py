"""Every write in research: findings, incidents, release decisions; one transaction and one audit event each."""
