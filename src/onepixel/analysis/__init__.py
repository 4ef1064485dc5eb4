"""What the study measures: propagation maps, locality, vulnerability maps and receptive fields."""
