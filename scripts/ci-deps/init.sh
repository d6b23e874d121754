#!/usr/bin/env bash
# init tests: swtpm + tpm2-tools + libtss2-dev (vTPM SKR), Lowkey Vault (an Azure Key Vault
# emulator, a Spring Boot jar on Maven Central) run on the Temurin 25 JDK, and openssl to build
# its PKCS#12 keystore. Idempotent.
#
# The tests find the jar through $LOWKEY_VAULT_JAR or at the ~/.m2 path below.
set -euo pipefail
LOWKEY_VERSION="${LOWKEY_VERSION:-7.3.74}"
DIR="$HOME/.m2/repository/com/github/nagyesta/lowkey-vault/lowkey-vault-app"
JAR="$DIR/$LOWKEY_VERSION/lowkey-vault-app-$LOWKEY_VERSION.jar"
# Written when the registry refuses the artifact, so the test can tell "not installable here"
# (a loud skip) from "install step not run" (a failure under CI=true).
UNAVAILABLE="$DIR/$LOWKEY_VERSION.unavailable"

command -v openssl >/dev/null || $SUDO apt-get install -y -qq --no-install-recommends openssl >/dev/null
# tests/skr_vtpm.rs (--evidence vtpm): a real software TPM (swtpm) provisioned with tpm2-tools,
# and libtss2-dev for tss-esapi (the TPM transfer key).
vtpm=()
command -v swtpm >/dev/null || vtpm+=(swtpm)
command -v swtpm_setup >/dev/null || vtpm+=(swtpm-tools)
command -v tpm2_createprimary >/dev/null || vtpm+=(tpm2-tools)
dpkg -s libtss2-dev >/dev/null 2>&1 || vtpm+=(libtss2-dev)
if [ "${#vtpm[@]}" -gt 0 ]; then
  $SUDO apt-get install -y -qq --no-install-recommends "${vtpm[@]}" >/dev/null
fi
command -v mvn >/dev/null || $SUDO apt-get install -y -qq --no-install-recommends maven >/dev/null

if [ ! -x /usr/lib/jvm/temurin-25-jdk-amd64/bin/java ]; then
  echo "WARNING: Temurin 25 JDK not found at /usr/lib/jvm/temurin-25-jdk-amd64; Lowkey Vault needs Java 25" >&2
fi

if [ -f "$JAR" ]; then
  echo "lowkey-vault-app $LOWKEY_VERSION already in ~/.m2"
  exit 0
fi
if mvn -B -q -U dependency:get \
     -Dartifact="com.github.nagyesta.lowkey-vault:lowkey-vault-app:$LOWKEY_VERSION" \
     -Dtransitive=false >/dev/null 2>&1 && [ -f "$JAR" ]; then
  echo "lowkey-vault-app $LOWKEY_VERSION fetched to $JAR"
  rm -f "$UNAVAILABLE"
else
  mkdir -p "$DIR" && date -u +%FT%TZ > "$UNAVAILABLE"
  # Not fatal for the rest of the suite: the package registry this machine reaches does not
  # serve this artifact everywhere. init's Lowkey test then says so loudly and is skipped;
  # the SKR test double and the dir: vault tests still run.
  echo "##################################################################################" >&2
  echo "WARNING: could not fetch com.github.nagyesta.lowkey-vault:lowkey-vault-app:$LOWKEY_VERSION" >&2
  echo "WARNING: init's Lowkey Vault tests will be SKIPPED (set LOWKEY_VAULT_JAR to a jar to run them)" >&2
  echo "##################################################################################" >&2
fi
