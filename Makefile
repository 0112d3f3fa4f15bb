# libvmown: the C core alone, as a library for interpreters other than
# CPython (docs/C-API.md).  Needs make and a C11 compiler; no Python.
#
#   make                             build/libvmown/: libvmown.so.MAJOR.MINOR.PATCH
#                                    (SONAME libvmown.so.MAJOR), its links, libvmown.a
#   make install PREFIX=/opt/vmown   lib/, include/vmown.h, lib/pkgconfig/vmown.pc
#   make uninstall PREFIX=/opt/vmown
#   make BUILDDIR=build/tsan CFLAGS='-O1 -g -fsanitize=thread' LDFLAGS=-fsanitize=thread
#                                    a ThreadSanitizer build (tests/test_libvmown.py)
#
# The sources are vmown/_build.py's SOURCES, the list the Python extension is
# built from (one copy of the core); the version is vmown.h's VMOWN_VERSION_*.
# Only the functions vmown.h marks VMOWN_EXTERN are exported (-fvisibility=hidden).

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
BUILDDIR ?= build/libvmown
CFLAGS ?= -O2 -g
INSTALL ?= install

TOP := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
NATIVE := $(TOP)/native
SOURCES := $(shell sed -n '/^SOURCES = \[/,/\]/p' $(TOP)/vmown/_build.py | grep -o '[a-z_0-9]*\.c')
HEADERS := $(wildcard $(NATIVE)/*.h)
version = $(shell sed -n 's/^\#define VMOWN_VERSION_$(1) \([0-9]*\)$$/\1/p' $(NATIVE)/vmown.h)
MAJOR := $(call version,MAJOR)
MINOR := $(call version,MINOR)
PATCH := $(call version,PATCH)
VERSION := $(MAJOR).$(MINOR).$(PATCH)
SONAME := libvmown.so.$(MAJOR)
REALNAME := libvmown.so.$(VERSION)

ifeq ($(SOURCES),)
$(error cannot read SOURCES from vmown/_build.py)
endif
ifeq ($(MAJOR),)
$(error cannot read VMOWN_VERSION_MAJOR from native/vmown.h)
endif

CORE_CFLAGS := -std=c11 -Wall -Wextra -Wno-unused-parameter -fPIC -fvisibility=hidden -pthread
OBJECTS := $(SOURCES:%.c=$(BUILDDIR)/%.o)

.PHONY: all install uninstall clean print-sources print-version

all: $(BUILDDIR)/$(REALNAME) $(BUILDDIR)/libvmown.a $(BUILDDIR)/vmown.pc

$(BUILDDIR)/%.o: $(NATIVE)/%.c $(HEADERS) | $(BUILDDIR)
	$(CC) $(CORE_CFLAGS) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILDDIR)/$(REALNAME): $(OBJECTS)
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,-z,defs $(LDFLAGS) -o $@ $(OBJECTS) -pthread
	ln -sf $(REALNAME) $(BUILDDIR)/$(SONAME)
	ln -sf $(SONAME) $(BUILDDIR)/libvmown.so

$(BUILDDIR)/libvmown.a: $(OBJECTS)
	rm -f $@
	$(AR) rcs $@ $(OBJECTS)

# Rewritten at every build and install: it names the PREFIX given then.
$(BUILDDIR)/vmown.pc: FORCE | $(BUILDDIR)
	printf '%s\n' \
	  'prefix=$(PREFIX)' \
	  'libdir=$(LIBDIR)' \
	  'includedir=$(INCLUDEDIR)' \
	  '' \
	  'Name: libvmown' \
	  'Description: VM ownership for interpreters with a threaded FFI' \
	  'Version: $(VERSION)' \
	  'Libs: -L$${libdir} -lvmown' \
	  'Libs.private: -pthread' \
	  'Cflags: -I$${includedir}' > $@

$(BUILDDIR):
	mkdir -p $@

install: all
	$(INSTALL) -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
	$(INSTALL) -m 755 $(BUILDDIR)/$(REALNAME) $(DESTDIR)$(LIBDIR)/$(REALNAME)
	ln -sf $(REALNAME) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libvmown.so
	$(INSTALL) -m 644 $(BUILDDIR)/libvmown.a $(DESTDIR)$(LIBDIR)/libvmown.a
	$(INSTALL) -m 644 $(NATIVE)/vmown.h $(DESTDIR)$(INCLUDEDIR)/vmown.h
	$(INSTALL) -m 644 $(BUILDDIR)/vmown.pc $(DESTDIR)$(PKGCONFIGDIR)/vmown.pc

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/$(REALNAME) $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/libvmown.so \
	  $(DESTDIR)$(LIBDIR)/libvmown.a $(DESTDIR)$(INCLUDEDIR)/vmown.h $(DESTDIR)$(PKGCONFIGDIR)/vmown.pc

clean:
	rm -rf $(BUILDDIR)

print-sources:
	@echo $(SOURCES)

print-version:
	@echo $(VERSION)

FORCE:
