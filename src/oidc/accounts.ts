// oidc-provider's findAccount: the clinician behind a `sub`, and the claims released per scope.
import type { FindAccount } from 'oidc-provider';

import { findUserById } from '../accounts/users.ts';
import type { Queryable } from '../db/index.ts';

export const CLAIMS = {
  openid: ['sub', 'acr', 'amr', 'auth_time'],
  profile: ['name', 'preferred_username'],
  fhirUser: ['fhirUser'],
};

export function accountFinder(db: Queryable): FindAccount {
  return async (_ctx, sub) => {
    const user = await findUserById(db, sub);
    if (!user || user.disabled) return undefined;
    return {
      accountId: user.id,
      claims: () => ({
        sub: user.id,
        preferred_username: user.username,
        ...(user.displayName ? { name: user.displayName } : {}),
        ...(user.fhirUser ? { fhirUser: user.fhirUser } : {}),
      }),
    };
  };
}
