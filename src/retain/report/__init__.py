"""Reports: the audit as a terminal table and as Markdown."""
