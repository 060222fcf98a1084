"""Money: quotes, caps, the daily budget's decisions, confirmation policy and the spend report."""
