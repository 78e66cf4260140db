"""The lab: an emulated monitoring box (a censor) and the networks around it."""
