# EnclaveID: the commands people already know.
.PHONY: test demo
test:
	bash scripts/test.sh

demo:
	cargo run -p enclaveid-proxy -- demo
