"""Pipeline stages (`python -m stages.<name>`) and the small modules they share."""
