"""Tests of what deploys Kraken: image, Helm chart, systemd units, runtime mirror set-up."""
