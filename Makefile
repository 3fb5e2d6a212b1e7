# Quick start: `make demo` and `make test`. Both install what they need into
# .venv/ (and the Debian packages below, when missing) and are idempotent.
VENV   ?= .venv
PYTHON ?= python3
LAB    ?= $(CURDIR)/.lab
STAMP  := $(VENV)/.installed

DEBIAN_PACKAGES := golang-go golang-github-vmware-govmomi-dev openvswitch-vtep \
                   openvswitch-common openvswitch-switch mariadb-server mariadb-client \
                   iputils-ping ethtool rabbitmq-server busybox dnsmasq-base dnsmasq-utils \
                   conntrack iptables iputils-arping

.PHONY: setup system-packages demo test clean

setup: system-packages $(STAMP)

system-packages:
	@bash scripts/ensure-debian-packages $(DEBIAN_PACKAGES)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/dvs-fabric --lab-dir $(LAB)/demo lab demo

test: setup
	$(VENV)/bin/python -m pytest -p no:cacheprovider -q tests

clean:
	-$(VENV)/bin/dvs-fabric --lab-dir $(LAB)/demo lab down
	rm -rf $(LAB)
