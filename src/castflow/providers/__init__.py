"""Provider roles (image edit, speech, lip-sync), their errors and implementations."""
