# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154  # the globals below are shared with the sourcing script
# lib-image.sh: the steps the image builders share, sourced by deploy/lab/build-source-image
# (and meant for pe-boot/build-pe-image, whose code these functions were taken from, messages
# included): Debian's kernel (download into a cache, or a given tree), the closure of a module
# list under modules.dep, copying modules into a staging tree, busybox-static and its applets, and
# newc cpio entries written by hand. Bash 4.3 or later (associative arrays, namerefs).
#
# The sourcing script provides:
#   prog              its name, for messages
#   fail STATUS MSG   prints "$prog: error: MSG" on stderr and exits with STATUS
#   say MSG           prints "$prog: MSG"
#   work              a private temporary directory
#   epoch             SOURCE_DATE_EPOCH, the mtime of archive entries
#   image_what        (optional) what the modules are for, in messages: "the PE" by default
# and sets, before img_resolve_kernel: kernel_from (empty: Debian's kernel), kernel_version
# (empty: the newest), cache (the download cache), and optionally kernel_package (the Debian
# metapackage naming the kernel to download; default linux-image-amd64).

# require_tool TOOL PACKAGE [WHY]
require_tool() {
  command -v "$1" >/dev/null 2>&1 ||
    fail 2 "$1 not found${3:+ ($3)}; install Debian package $2 (deploy/install-deps.sh)"
}

# --- kernel -------------------------------------------------------------------------------

# fetch_debian_kernel: sets kernel_from to the extracted tree of the linux-image package that
# linux-image-amd64 depends on (downloaded into the cache unless already there), and
# kernel_source to the package it came from.
fetch_debian_kernel() {
  local meta=${kernel_package:-linux-image-amd64}
  local why="the default kernel comes from Debian's $meta; or pass --kernel-from DIR"
  require_tool apt-cache apt "$why"
  require_tool apt-get apt "$why"
  require_tool dpkg-deb dpkg "$why"
  mkdir -p "$cache" || fail 2 "cannot create the cache dir $cache; pass --cache DIR"
  exec 9>"$cache/.lock"
  flock 9

  # The metapackage names the versioned kernel package, usually with its exact version:
  # "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)". One apt-cache call takes ~1 s here.
  local pkg="" version="" dep
  dep=$(apt-cache show --no-all-versions "$meta" 2>/dev/null |
        sed -n 's/^Depends: \(linux-image-[0-9][^ ,|]*\)\( (= \([^)]*\))\)\{0,1\}.*/\1 \3/p' |
        head -n 1) || true
  read -r pkg version <<<"$dep" || true
  if [[ -n $pkg && -z $version ]]; then
    version=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null |
              sed -n 's/^Version: //p' | head -n 1) || true
  fi
  if [[ -z $pkg || -z $version ]]; then
    # Offline rebuilds still work from what an earlier run extracted.
    # Only trees of the metapackage's flavour (linux-image-ABI-amd64, not -cloud-amd64).
    local cached="" t flavour=${meta#linux-image-}
    while read -r t; do
      [[ ${t##*/} =~ ^linux-image-[0-9][0-9.]*-[0-9]+-${flavour}_ ]] && cached=$t
    done < <(find "$cache" -mindepth 2 -maxdepth 2 -path "$cache/linux-image-*/boot" \
               -printf '%h\n' 2>/dev/null | sort -V)
    [[ -n $cached ]] || fail 2 "apt-cache does not know $meta (or its dependency) \
and $cache holds no kernel; run apt-get update (Debian main must be a source), or pass \
--kernel-from DIR"
    say "warning: apt-cache cannot resolve $meta; using the cached ${cached##*/}"
    kernel_from=$cached
    # The tree is named after its .deb, PKG_VERSION_ARCH with ':' as %3a.
    local v=${cached##*/}
    v=${v#*_}
    v=${v%_*}
    kernel_source="debian $(basename "${cached%%_*}") ${v//%3a/:}"
    return
  fi

  local deb="${pkg}_${version//:/%3a}_amd64.deb"
  if [[ -s $cache/$deb ]]; then
    say "using cached $cache/$deb"
  else
    say "downloading $pkg $version (apt-get download)"
    local dl="$work/download"
    mkdir -p "$dl"
    # apt drops to _apt for downloads; give it the directory so it need not run unsandboxed.
    if ((EUID == 0)) && id _apt >/dev/null 2>&1; then chown _apt "$dl"; fi
    (cd "$dl" && apt-get download -q "$pkg=$version") >"$work/apt.log" 2>&1 || {
      cat "$work/apt.log" >&2
      fail 1 "apt-get download $pkg=$version failed (above); check the network and apt sources, \
or pass --kernel-from DIR"
    }
    [[ -s $dl/$deb ]] || fail 1 "apt-get download left no $deb in $dl: $(ls "$dl")"
    mv -f "$dl/$deb" "$cache/$deb.part"
    mv -f "$cache/$deb.part" "$cache/$deb"
  fi
  local tree="$cache/${deb%.deb}"
  if [[ ! -d $tree/boot ]]; then
    say "extracting $deb into $tree"
    rm -rf "$tree.part"
    dpkg-deb -x "$cache/$deb" "$tree.part" ||
      fail 1 "dpkg-deb -x $cache/$deb failed; delete it so the next run downloads it again"
    rm -rf "$tree"
    mv "$tree.part" "$tree"
  fi
  # The package ships no modules.dep (its postinst runs depmod); make it once, as postinst would,
  # so later builds need not scan all 4000 modules.
  local m
  for m in "$tree"/lib/modules/*; do
    [[ -d $m && ! -s $m/modules.dep ]] || continue
    depmod -b "$tree" "${m##*/}" || fail 1 "depmod -b $tree ${m##*/} failed; delete $tree"
  done
  kernel_from=$tree
  kernel_source="debian $pkg $version"
}

# module_dir KVER: the modules directory of KVER in the tree, or nothing.
module_dir() {
  local d
  for d in "$kernel_from/lib/modules/$1" "$kernel_from/usr/lib/modules/$1"; do
    [[ -d $d ]] && { echo "$d"; return; }
  done
}

# img_resolve_kernel: from kernel_from (fetching Debian's kernel when empty) and kernel_version,
# sets kernel_from (absolute), kernel_source, kver, vmlinuz_src and moddir.
img_resolve_kernel() {
  if [[ -n $kernel_from ]]; then
    [[ -d $kernel_from ]] || fail 2 "--kernel-from $kernel_from is not a directory"
    kernel_from=$(cd "$kernel_from" && pwd)
    kernel_source=$kernel_from
  else
    fetch_debian_kernel
  fi

  [[ -d $kernel_from/boot ]] || fail 2 "$kernel_from/boot is missing: --kernel-from wants a tree \
with boot/vmlinuz-KVER and lib/modules/KVER (an extracted linux-image .deb, or /)"

  local kvers=() f k
  for f in "$kernel_from"/boot/vmlinuz-*; do
    [[ -f $f ]] || continue
    k=${f##*/vmlinuz-}
    [[ -n $(module_dir "$k") ]] && kvers+=("$k")
  done
  ((${#kvers[@]})) || fail 2 "no kernel in $kernel_from: it needs boot/vmlinuz-KVER together \
with lib/modules/KVER; found boot/: $(cd "$kernel_from/boot" && echo * | cut -c1-200)"
  if [[ -n $kernel_version ]]; then
    printf '%s\n' "${kvers[@]}" | grep -qxF -- "$kernel_version" ||
      fail 2 "--kernel-version $kernel_version is not in $kernel_from (with its modules); \
available: ${kvers[*]}"
    kver=$kernel_version
  else
    kver=$(printf '%s\n' "${kvers[@]}" | sort -V | tail -n 1)
  fi
  vmlinuz_src="$kernel_from/boot/vmlinuz-$kver"
  moddir=$(module_dir "$kver")
  say "kernel $kver from $kernel_source"
}

# --- modules ------------------------------------------------------------------------------

# img_select_modules "REQUIRED..." "OPTIONAL..." [WHAT]: the modules of kver to take, with everything
# they depend on (modules.dep, computed with depmod -n when the tree has none). A required name
# must be a module or built in; an optional one is taken only when it is a module. Sets
# mod_paths (sorted paths relative to moddir), wanted_names (the requested names that are
# modules) and builtin_taken (the requested names the kernel builds in). WHAT (default
# "modules") starts the line it prints.
img_select_modules() {
  local -a required optional
  read -r -a required <<<"$1"
  read -r -a optional <<<"$2"
  local depfile="$work/modules.dep"
  if [[ -s $moddir/modules.dep ]]; then
    cp "$moddir/modules.dep" "$depfile"
  else
    # Packages ship no modules.dep (postinst runs depmod); compute it without writing the tree.
    depmod -n -b "${moddir%/lib/modules/*}" "$kver" 2>"$work/depmod.err" |
      grep -E '^[^#[:space:]]+\.ko(\.[a-z]+)?:' >"$depfile" || true
    [[ -s $depfile ]] || { cat "$work/depmod.err" >&2
      fail 2 "$moddir has no modules.dep and depmod -n found no modules in it"; }
  fi

  local -A path_of=() deps_of=() take=()
  local line p n m
  while IFS= read -r line; do
    p=${line%%:*}
    n=${p##*/}; n=${n%%.ko*}; n=${n//-/_}
    path_of[$n]=$p
    deps_of[$p]=${line#*:}
  done <"$depfile"

  local builtin_names=" "
  if [[ -f $moddir/modules.builtin ]]; then
    while IFS= read -r p; do
      n=${p##*/}; n=${n%%.ko*}; builtin_names+="${n//-/_} "
    done <"$moddir/modules.builtin"
  fi

  _img_add_module_path() {  # the module and all it depends on
    local p=$1 d
    [[ -n ${take[$p]:-} ]] && return
    take[$p]=1
    for d in ${deps_of[$p]:-}; do _img_add_module_path "$d"; done
  }
  wanted_names=() builtin_taken=()
  for m in "${required[@]}" "${optional[@]}"; do
    n=${m//-/_}
    if [[ -n ${path_of[$n]:-} ]]; then
      _img_add_module_path "${path_of[$n]}"
      wanted_names+=("$n")
    elif [[ $builtin_names == *" $n "* ]]; then
      builtin_taken+=("$n")
    elif [[ " ${optional[*]} " != *" $m "* ]]; then
      fail 2 "kernel $kver has no module $m and does not build it in (modules.builtin); \
${image_what:-the PE} needs it: use a kernel with CONFIG for $m set to y or m \
(--kernel-from/--kernel-version)"
    fi
  done
  unset -f _img_add_module_path
  mod_paths=()
  if ((${#take[@]})); then mapfile -t mod_paths < <(printf '%s\n' "${!take[@]}" | sort); fi
  say "${3:-modules}: ${wanted_names[*]} (+$((${#take[@]} - ${#wanted_names[@]})) dependencies); \
built in: ${builtin_taken[*]:-none}"
}

# img_stage_modules ROOT: copies mod_paths into ROOT/lib/modules/KVER as plain .ko files
# (decompressing .ko.xz, .ko.zst, .ko.gz), with modules.builtin(.modinfo) and a modules.order of
# the modules taken, and runs depmod -b ROOT. Sets module_names (sorted, '-' as '_') and
# module_files (the .ko paths relative to lib/modules/KVER, sorted).
img_stage_modules() {
  local root=$1 p n src dst
  local stage_mod="$root/lib/modules/$kver"
  mkdir -p "$stage_mod"
  module_names=() module_files=()
  for p in ${mod_paths[@]+"${mod_paths[@]}"}; do
    src="$moddir/$p" dst="$stage_mod/${p%.ko*}.ko"
    mkdir -p "${dst%/*}"
    case $p in
      *.ko) cp "$src" "$dst" ;;
      *.ko.xz) require_tool xz xz-utils "$p is xz-compressed"; xz -dc "$src" >"$dst" ;;
      *.ko.zst) require_tool zstd zstd "$p is zstd-compressed"; zstd -qdc "$src" >"$dst" ;;
      *.ko.gz) gzip -dc "$src" >"$dst" ;;
      *) fail 2 "module $p in $moddir/modules.dep has an unknown compression" ;;
    esac
    n=${p##*/}; n=${n%%.ko*}; module_names+=("${n//-/_}")
    module_files+=("${p%.ko*}.ko")
  done
  if ((${#module_names[@]})); then
    mapfile -t module_names < <(printf '%s\n' "${module_names[@]}" | sort)
    mapfile -t module_files < <(printf '%s\n' "${module_files[@]}" | sort)
  fi
  [[ -f $moddir/modules.builtin ]] && cp "$moddir/modules.builtin" "$stage_mod/"
  [[ -f $moddir/modules.builtin.modinfo ]] && cp "$moddir/modules.builtin.modinfo" "$stage_mod/"
  # modules.order fixes depmod's output order; keep the lines of the modules we took.
  if [[ -f $moddir/modules.order ]]; then
    sed 's/\.ko\.[a-z]*$/.ko/' "$moddir/modules.order" | while IFS= read -r p; do
      if [[ -f $stage_mod/$p ]]; then echo "$p"; fi
    done >"$stage_mod/modules.order"
  fi
  depmod -b "$root" "$kver" || fail 1 "depmod -b $root $kver failed"
}

# --- busybox ------------------------------------------------------------------------------

# img_check_busybox: /bin/busybox must be busybox-static. Sets busybox, busybox_version and
# applets (the sorted paths of busybox --list-full, without a leading /).
img_check_busybox() {
  busybox=/bin/busybox
  [[ -x $busybox ]] || fail 2 "$busybox not found; install Debian package busybox-static"
  if ldd "$busybox" >/dev/null 2>&1; then
    fail 2 "$busybox is dynamically linked (the busybox package); install busybox-static instead"
  fi
  # busybox without arguments prints its banner and exits 1.
  busybox_version=$("$busybox" 2>&1 |
                    sed -n '1s/^BusyBox v\([^ ]*\( ([^)]*)\)\{0,1\}\).*/\1/p') || true
  mapfile -t applets < <("$busybox" --list-full | sort)
  ((${#applets[@]} > 100)) || fail 2 "$busybox --list-full lists ${#applets[@]} applets; \
install busybox-static"
}

# --- cpio ---------------------------------------------------------------------------------

# newc_entry NAME MODE [RDEVMAJOR RDEVMINOR | DATA]: one cpio newc entry, written by hand for
# what needs no file in the staging tree: /dev/console (so the build needs no root for mknod
# and the kernel hands /init an open console from its first instruction) and busybox's applet
# symlinks (DATA is the link target). Inode numbers count up from newc_ino.
newc_ino=$((0x40000000))
newc_entry() {
  local name=$1 mode=$2 rmaj=0 rmin=0 data="" pads=('' '\0' '\0\0' '\0\0\0')
  if (($# == 4)); then rmaj=$3 rmin=$4; else data=${3:-}; fi
  local namesize=$((${#name} + 1))
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s' \
    $((newc_ino++)) "$mode" 0 0 1 "$epoch" "${#data}" 0 0 "$rmaj" "$rmin" "$namesize" 0 "$name"
  # shellcheck disable=SC2059  # the formats are NUL escapes from pads, nothing else
  printf "\\0${pads[(4 - (110 + namesize) % 4) % 4]}"
  printf '%s' "$data"
  # shellcheck disable=SC2059
  printf "${pads[(4 - ${#data} % 4) % 4]}"
}

# img_initramfs STAGE OUT: the gzip'd initramfs of STAGE (every mtime set to epoch, uid and gid
# 0, sorted, reproducible) followed by a second archive with /dev/console and a symlink to
# /bin/busybox for every applet STAGE does not have. Sets initrd_cpio_bytes (uncompressed size).
img_initramfs() {
  local stage=$1 out=$2 cpio_file="$work/initrd.cpio.$RANDOM" applet
  find "$stage" -exec touch -h -d "@$epoch" {} +
  (cd "$stage" && find . -mindepth 1 -printf '%P\n' | sort |
    cpio -o -H newc -R 0:0 --reproducible --quiet) >"$cpio_file" ||
    fail 1 "cpio failed building the initramfs archive"
  # A second archive, appended: the kernel unpacks concatenated archives in order, so the
  # directories of the first exist by then.
  {
    newc_entry dev/console $((0020600)) 5 1
    for applet in "${applets[@]}"; do
      [[ -e $stage/$applet || -L $stage/$applet ]] || newc_entry "$applet" $((0120777)) /bin/busybox
    done
    newc_entry TRAILER!!! 0
  } >>"$cpio_file"
  initrd_cpio_bytes=$(stat -c %s "$cpio_file")
  gzip -n -6 <"$cpio_file" >"$out" || fail 1 "gzip of the initramfs failed"
  rm -f "$cpio_file"
}

# --- output -------------------------------------------------------------------------------

json_str() {  # a JSON string literal
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}
join_json() { local s="" x; for x in "$@"; do s+="${s:+, }$(json_str "$x")"; done; echo "[$s]"; }
img_size() { local b; b=$(stat -c %s "$1"); echo "$b bytes, $(((b + 524288) / 1048576)) MiB"; }
