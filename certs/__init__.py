"""CA and serving certificates for the webhook, and their installation into the cluster."""
