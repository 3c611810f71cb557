"""The validate stage's checks: harm, groundedness."""
