"""Restarts of containers whose checks keep failing (SERVICE_CHECK_RESTART_*)."""
