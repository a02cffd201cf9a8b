"""Run profiles (YAML), shipped as package data so that an installed svdpipe finds them."""
