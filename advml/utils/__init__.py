"""Small shared helpers: safe file I/O, seeding and device selection."""
