#!/bin/sh
# The shared library's ABI surface: SONAME, and exactly the functions the public header declares are
# exported (with the GEMMACLIENT_0.1 version node), nothing of the codec or libc wrappers.
# Usage: check-abi.sh LIBGEMMACLIENT.so HEADER
set -eu
lib=$1
header=$2
fail() { echo "not ok - $*"; exit 1; }

echo "1..3"
soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = "libgemmaclient.so.0" ] || fail "SONAME is '$soname', expected libgemmaclient.so.0"
echo "ok 1 - SONAME libgemmaclient.so.0"

exported=$(readelf --dyn-syms -W "$lib" | awk '$7 != "UND" && $7 != "ABS" && ($4 == "FUNC" || $4 == "OBJECT") {print $8}' |
           sort -u)
declared=$(sed -n 's/^GC_EXTERN [^(]*[ *]\(gc_[a-z0-9_]*\)(.*/\1/p' "$header" | sort -u)
[ -n "$declared" ] || fail "no GC_EXTERN declarations found in $header"
unversioned=$(echo "$exported" | grep -v '@@GEMMACLIENT_0.1$' || true)
[ -z "$unversioned" ] || fail "symbols without the GEMMACLIENT_0.1 node: $unversioned"
echo "ok 2 - every exported symbol carries GEMMACLIENT_0.1"

names=$(echo "$exported" | sed 's/@@.*//' | sort -u)
if [ "$names" != "$declared" ]; then
        echo "# exported but not declared:"; echo "$names" | grep -vxF "$declared" | sed 's/^/#   /' || true
        echo "# declared but not exported:"; echo "$declared" | grep -vxF "$names" | sed 's/^/#   /' || true
        fail "exported symbols differ from the header's declarations"
fi
echo "ok 3 - exported symbols = the $(echo "$declared" | wc -l) functions of gemmaclient.h"
