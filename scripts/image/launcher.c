/*
 * The volume's front door: /opt/rke-tools/sidekick, and every tool name linked to it
 * (entrypoint.sh, rke-etcd-backup, ...).
 *
 * It runs inside foreign images (hyperkube) that have no Python and any C library, so it is
 * linked statically and needs nothing from them; against musl, whose start-up costs a tenth
 * of static glibc's (it runs before every Kubernetes component). It execs the volume's own
 * dynamic loader on the volume's own Python:
 *
 *   <vol>/lib/ld-linux-x86-64.so.2 --library-path <vol>/lib --argv0 <vol>/bin/python3
 *       <vol>/bin/python3 -I -S -X utf8 -OO -c BOOT <argv[0]> <argv[1]> ...
 *
 * <vol> is the directory holding this executable (from /proc/self/exe, so links to it from
 * anywhere work). The loader and --library-path keep the foreign C library, LD_LIBRARY_PATH
 * and the foreign loader out; -I ignores PYTHONPATH, PYTHONHOME and user site; -S skips
 * site.py; -X utf8 makes I/O independent of the foreign locale; -OO matches the volume's
 * bytecode, compiled without docstrings or asserts (assemble-volume). argv[0] is passed on
 * unchanged, so the dispatcher still picks the tool by the name it was called by.
 *
 * The component entrypoint.sh execs must get the environment exactly as the image gave it,
 * but two variables must not reach the volume's Python as they are:
 * - LC_CTYPE: in the C locale (most containers) Python sets LC_CTYPE=C.UTF-8 in its own
 *   environment (PEP 538), which the component would inherit;
 * - LD_PRELOAD: a library the foreign image preloads is built for its C library, not the
 *   volume's, and would be loaded into the volume's Python by the bundled loader.
 * So the launcher hands each over in SIDEKICK_LAUNCHER_<NAME> ("=value", or empty when
 * unset), removes LD_PRELOAD, and the boot code puts both back before any tool runs.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KEEP_PREFIX "SIDEKICK_LAUNCHER_"
/*
 * The boot code uses posix, not os: os is not loaded at interpreter start and costs the
 * entrypoint's fast path a tenth of its time. os.environ, once some tool imports os, wraps
 * the same posix.environ dict, so the dict is kept in step with the process environment.
 */
#define BOOT                                                          \
    "import posix, sys\n"                                             \
    "env = posix.environ\n"                                           \
    "for n in (b'LC_CTYPE', b'LD_PRELOAD'):\n"                        \
    "    k = b'" KEEP_PREFIX "' + n\n"                                \
    "    v = env.pop(k, None)\n"                                      \
    "    if v is None: continue\n"                                    \
    "    posix.unsetenv(k)\n"                                         \
    "    if v: env[n] = v[1:]; posix.putenv(n, v[1:])\n"              \
    "    else: env.pop(n, None); posix.unsetenv(n)\n"                 \
    "del env, n, k, v\n"                                              \
    "sys.path.append(sys.prefix + '/lib/python3/site-packages')\n"   \
    "from sidekick.dispatch import run\n"                             \
    "run(sys.argv[1:])\n"

static void fail(const char *what, const char *path)
{
    fprintf(stderr, "level=fatal msg=\"sidekick launcher: %s %s: %s\"\n", what, path, strerror(errno));
    exit(127);
}

/* Save NAME's value (or its absence) in SIDEKICK_LAUNCHER_NAME for the boot code. */
static void hand_over(const char *name, int remove)
{
    static char keyname[64];
    const char *value = getenv(name);
    size_t len = value ? strlen(value) + 2 : 1;
    char *keep = malloc(len);
    if (keep == NULL)
        fail("out of memory for", name);
    snprintf(keep, len, "%s%s", value ? "=" : "", value ? value : "");
    snprintf(keyname, sizeof keyname, "%s%s", KEEP_PREFIX, name);
    if (setenv(keyname, keep, 1) != 0)
        fail("cannot set", keyname);
    if (remove && unsetenv(name) != 0)
        fail("cannot unset", name);
}

int main(int argc, char **argv)
{
    static char self[PATH_MAX], loader[PATH_MAX], libdir[PATH_MAX], python[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        fail("cannot read", "/proc/self/exe");
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash == NULL)
        fail("unexpected path", self);
    *slash = '\0';
    if (snprintf(loader, sizeof loader, "%s/lib/ld-linux-x86-64.so.2", self) >= (int)sizeof loader ||
        snprintf(libdir, sizeof libdir, "%s/lib", self) >= (int)sizeof libdir ||
        snprintf(python, sizeof python, "%s/bin/python3", self) >= (int)sizeof python) {
        errno = ENAMETOOLONG;
        fail("path too long:", self);
    }

    hand_over("LC_CTYPE", 0);
    hand_over("LD_PRELOAD", 1);

    const char *head[] = {loader, "--library-path", libdir, "--argv0", python, python,
                          "-I", "-S", "-X", "utf8", "-OO", "-c", BOOT};
    size_t nhead = sizeof head / sizeof head[0];
    char **args = calloc(nhead + (size_t)argc + 1, sizeof *args);
    if (args == NULL)
        fail("out of memory for", "argv");
    for (size_t i = 0; i < nhead; i++)
        args[i] = (char *)head[i];
    for (int i = 0; i < argc; i++)
        args[nhead + (size_t)i] = argv[i];
    args[nhead + (size_t)argc] = NULL;
    execv(loader, args);
    fail("cannot execute", loader);
    return 127;
}
