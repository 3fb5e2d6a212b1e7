"""``dvs-fabric topology``: the overall view, read live (gather) and drawn (text, SVG)."""
