package mesh

# A ref head in package mesh writes into the library's document.
authz.extra := true
