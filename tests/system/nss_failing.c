/* A tiny NSS module that always fails, built by the test setup.
 *
 * Compiled twice: -DMODULE=qdunavail -DSTATUS=NSS_STATUS_UNAVAIL -DERR=EIO (a backend that is
 * down, like an unreachable LDAP server) and -DMODULE=qdagain -DSTATUS=NSS_STATUS_TRYAGAIN
 * -DERR=EAGAIN (a backend that answers "try again").  Listed after "files" in a scratch
 * nsswitch.conf, it answers every name and uid that the files do not have. */
#include <errno.h>
#include <grp.h>
#include <nss.h>
#include <pwd.h>
#include <stddef.h>
#include <sys/types.h>

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define FN(name) CAT(CAT(_nss_, MODULE), CAT(_, name))

enum nss_status FN(getpwnam_r)(const char *n, struct passwd *p, char *b, size_t l, int *e)
{
    (void)n; (void)p; (void)b; (void)l;
    *e = ERR;
    return STATUS;
}

enum nss_status FN(getpwuid_r)(uid_t u, struct passwd *p, char *b, size_t l, int *e)
{
    (void)u; (void)p; (void)b; (void)l;
    *e = ERR;
    return STATUS;
}

enum nss_status FN(getgrnam_r)(const char *n, struct group *g, char *b, size_t l, int *e)
{
    (void)n; (void)g; (void)b; (void)l;
    *e = ERR;
    return STATUS;
}

enum nss_status FN(getgrgid_r)(gid_t i, struct group *g, char *b, size_t l, int *e)
{
    (void)i; (void)g; (void)b; (void)l;
    *e = ERR;
    return STATUS;
}
