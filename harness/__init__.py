"""forkpool's harness: boots the suite on real servers and proves the connection ceiling."""
