package mesh.authz.extra

x := 1
