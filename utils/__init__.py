"""Config loading and validation, checkpoint io, seeding, devices, errors."""
